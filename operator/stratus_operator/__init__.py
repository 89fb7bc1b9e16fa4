"""The Stratus operator: kopf handlers (thin) over plain controllers, scheduler and IPAM."""
