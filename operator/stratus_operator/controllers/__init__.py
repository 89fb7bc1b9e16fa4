"""Domain logic of the operator: plain functions over stratus_api models, no kopf."""
