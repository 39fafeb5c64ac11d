"""wd-lab: the pipeline stages of the weight-decay study; each `stages.<name>` module is one DVC stage."""

from wdlab.startup import defer_collection

defer_collection()  # before a stage's imports; wdlab.stage.run_stage resumes it (wdlab/startup.py says why)
