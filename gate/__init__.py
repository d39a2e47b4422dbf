"""The pull-time signature gate: a manifest GET/HEAD in a protected namespace is answered only for a
digest that carries a valid cosign signature by the stack's key (gate/app.py; served by gate/serve.py)."""
