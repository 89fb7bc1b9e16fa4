"""The agent's HTTPS API and its event stream: the top layer, over the manager."""
