"""What is done to a seat on this machine: homes, accounts, control groups, wipes, completion."""
