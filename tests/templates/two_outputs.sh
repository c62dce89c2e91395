#!/bin/bash
# Writes two outputs, after <<seconds>> s.
sleep <<seconds>>
echo first > <<out1>>
echo second > <<out2>>
