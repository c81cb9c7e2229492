"""The inference engine: admission, batchers, the model thread, and the service composing them."""
