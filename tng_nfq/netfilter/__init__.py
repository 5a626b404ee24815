"""The netfilter datapath: config -> rule plan (pure) -> kernel (apply).

`plan` turns the netfilter endpoints of a Config into exact iptables-restore
text and policy-routing entries; `apply` installs and removes them. See
rules/README.md for every chain, mark and table.
"""
