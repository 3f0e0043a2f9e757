"""Source archives: real images and masks uploaded once and named by jobs."""
