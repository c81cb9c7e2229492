"""Media in, checked pixels out: images (bytes -> RGB), faces, video frames."""
