"""The review app's routes: pages and static assets, items and answers, team state."""
