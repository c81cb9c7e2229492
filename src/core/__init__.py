"""Facts defined once and used by every layer: settings, errors, device, labels, request context."""
