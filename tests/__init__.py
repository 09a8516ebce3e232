"""The test suite; its helpers (hubutil, svcutil, portal_server) are imported as ``tests.<module>``, by the benchmarks too."""
