"""linrec.tools."""
