"""What the stages hand each other, as types that read and write their own files."""
