"""Post-processing: from probabilities to label images (segments, instances).

The stage between inference and evaluation: it imports ``io``, ``nets`` and ``inference``,
never ``evaluation`` or a workflow.
"""
