"""A 1,000-run deep chain stays usable (transparent flattening past the overlay limit)."""
from coppice_client import stdout_of


def test_thousand_deep_chain(client, busybox):
    img = busybox
    for i in range(1000):
        op = client.run(img, f"echo {i} > /step; echo {i} >> /log")
        assert op["status"] == "SUCCESS", op
        img = op["result_image_uuid"]
    out = stdout_of(client.run(img, "cat /step; wc -l < /log; head -1 /log"))
    assert out == "999\n1000\n0\n"
    info = client.get(f"/v1/inspect/{img}/").json()
    assert info["depth"] == 1000
    assert client.get(f"/v1/inspect/{img}/download", params={"path": "/step"}).body == b"999\n"
