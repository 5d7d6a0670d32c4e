"""Prepaid credits: calls bought on-chain in advance, spent from leases."""
