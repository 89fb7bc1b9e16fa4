"""What a disk image file is (qcow2 header, qemu-img info checks): shared by the image store
and the file disk driver.
"""
