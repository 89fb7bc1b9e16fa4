"""The operator's services: what handlers call. They reach the Kubernetes API, the agents
and the in-memory ledgers, and keep domain decisions in the controllers below them."""
