"""The registry's token service: who may pull, push and delete what (practices 3 and 4)."""
