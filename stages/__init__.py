"""wd-lab: the pipeline stages of the weight-decay study; each `stages.<name>` module is one DVC stage."""
