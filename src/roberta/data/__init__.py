"""Corpus reading, preparation into token shards, the paper's input formats, and batching."""
