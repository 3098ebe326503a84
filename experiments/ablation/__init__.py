"""The chapter's ablation study: rows (data), runner (main) and reports (report)."""
