"""Built-in data sets that need no download: the talk's synthetic task, sklearn digits, mnist1d."""
