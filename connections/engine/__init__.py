"""The refresh engine: storing tokens, the lease and fenced writes, failure classes, the sweep and a worker's
batches."""
