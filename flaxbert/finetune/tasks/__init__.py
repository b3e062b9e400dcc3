"""Fine-tuning tasks: one module per task family (reading → features → head outputs → predictions → scores)."""
