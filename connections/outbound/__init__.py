"""The outbound policy every call leaving Control Room passes: https, private addresses, the forward proxy, the hard
deadline."""
