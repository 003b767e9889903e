//! weir: a streaming host for edge gateways.
