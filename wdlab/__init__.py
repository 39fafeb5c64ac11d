"""wd-lab's library: everything the DVC stages in `stages/` share, organised by what it is."""
