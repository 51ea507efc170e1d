"""A smaller run of bench/soak.py (`make soak` is the full 10,000-run version): runs at
concurrency 32, the server killed with SIGKILL half-way and restarted; no accepted run is lost,
every image holds what its run wrote, and nothing is left behind (issue #12)."""
import argparse
import importlib.util
import pathlib

from conftest import COPPICED

SOAK = pathlib.Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def test_soak_with_a_kill9_loses_nothing(coppiced_bin):
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    args = argparse.Namespace(runs=1500, concurrency=32, kill_at=750, workers=16, deadline=600)
    s = soak.Soak(args, COPPICED)
    try:
        assert s.run(), "the soak found problems (see its report above)"
    finally:
        s.cleanup()
