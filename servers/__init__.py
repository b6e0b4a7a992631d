"""One party of the cluster: its domain (rounds, uploads, closing, storage), servicers and
operations; see docs/architecture.md §4 for what each module holds."""
