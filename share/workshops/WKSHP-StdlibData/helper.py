# rendered for student{{ STDID }}
STUDENT = {{ STDID }}


def greet():
    return f'hello student{STUDENT}'
