"""Releases onto cells: bundle format (``bundle``), making one (``create``), golden self-test (``selftest``), the
release store on a cell (``releases``), the TensorRT engine step (``engine``), service restart and READY
(``service``) and the install / rollback sequence (``install``). Command line: ``okcell bundle`` (edge.cli.bundle)."""
