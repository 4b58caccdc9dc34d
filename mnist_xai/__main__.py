"""``python -m mnist_xai``: every registered method as the Markdown table of docs/methods.md."""
from mnist_xai import markdown_table

print(markdown_table())
