"""Routing: which replica serves a request. One policy per file behind one small interface."""
