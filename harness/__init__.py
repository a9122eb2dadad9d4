"""Development harness, outside the wheel: the chaos run (``python -m harness.chaos``, ``make
chaos``), the fault-injecting S3 proxy and the invariant checker that judges the chaos run
and the property tests."""
