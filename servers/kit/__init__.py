"""The environment authoring kit: the catalog (`gym env list`), the scaffold (`gym env new`) and the
conformance check (`gym env test`). The `gym` CLI imports these lazily, inside its commands."""
