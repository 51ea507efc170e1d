// HTTP API (see api/*.h).
