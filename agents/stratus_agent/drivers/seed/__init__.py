"""Seed drives: the cloud-init NoCloud ISO a guest reads its first-boot configuration from."""
