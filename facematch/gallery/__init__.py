"""Gallery: SQLite source of truth, FAISS (or Milvus) index, open-set identification."""
