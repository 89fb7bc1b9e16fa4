"""Network drivers: node networking and a guest's NICs. OVS now; tenant networks next."""
