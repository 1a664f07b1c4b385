"""Catalog and pricing: plans, unit prices, meters and model prices, discount slabs, offers, coupons, quotes."""
