"""The all-in-one local cloud for development and tests: `stratus dev up` / `dev down`."""
