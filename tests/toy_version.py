"""A module constant for the toy stage to report: the code-snapshot test edits it after submitting."""
VERSION = "checkout"
