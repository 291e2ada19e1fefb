"""Small helpers shared by every room: errors, atomic writes, image IO."""
