"""What runs at a site: the AnalyticsSender and NVFlare-style tracking writers."""
