"""Payments: orders, attempts, gateway events inbox, fulfilment, refunds, disputes, reconciliation.

Only this package calls payment gateways; the adapters live in ``payments.gateways``.
"""
