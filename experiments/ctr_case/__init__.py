"""The InMobi and Meta DLRM case studies on a synthetic click log (chapter 12, sections 16-17)."""
