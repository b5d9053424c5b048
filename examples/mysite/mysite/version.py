GREETING = "Hello from mysite v1"
