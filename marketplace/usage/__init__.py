"""What was served: one usage row per paid call, whatever paid for it."""
