"""Fake gateway servers the tests start on 127.0.0.1: the official SDKs send their real HTTP requests to them."""
