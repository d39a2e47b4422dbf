"""registry-fleet operator CLI (`python -m fleet`) and the recording engine behind plan and tests."""
