"""What is for sale: which listings are offered, search, and purchase preparation."""
