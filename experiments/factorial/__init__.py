"""A fractional factorial design over the chapter's six techniques: order-free attribution."""
